#!/usr/bin/env bash
# The GPU check, in one call on a machine with an NVIDIA GPU and no network.
#
# Installs the wheels of `make gpu-bundle` into a fresh venv that sees the machine's own
# PyTorch (and the rest of its Python packages), then runs, each under a time limit, the
# `gpu`-marked tests and the benchmarks' GPU sections, and writes every figure to one file:
# $OUT/gpu_check.md (the log of each step beside it, in gpu_check.log). About 8 minutes.
#
#   tools/gpu_check.sh [--dry-run] [--bundle DIR] [--python PY] [--out DIR] [--base-site DIR]
#
#   --dry-run        a CPU-only machine: everything but what needs CUDA (the tests skip, the
#                    benchmarks say "no CUDA"); without it, no CUDA device is an error
#   --bundle DIR     the wheels (default dist/gpu-bundle); built for PY's version
#   --python PY      the interpreter that has torch (default python3)
#   --out DIR        where the report goes (default $OUT, else dist/gpu-check)
#   --base-site DIR  a folder of packages the venv sees as the machine's own (repeatable; the
#                    CPU dry run uses it to stand in for the GPU machine's image)
#   --budget S       seconds for the whole check (default 460)
#   --no-tests, --no-benchmarks   leave those out (a rerun of the other half)
#
# Exit status: 0 when the bundle installed and every test and benchmark passed.
set -uo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here" || exit 2
dry_run=0 bundle=dist/gpu-bundle python=python3 out=${OUT:-dist/gpu-check} budget=460
tests=1 benchmarks=1
base_sites=()
while (($#)); do
    case $1 in
        --dry-run) dry_run=1 ;;
        --bundle) bundle=$2; shift ;;
        --python) python=$2; shift ;;
        --out) out=$2; shift ;;
        --base-site) base_sites+=("$2"); shift ;;
        --budget) budget=$2; shift ;;
        --no-tests) tests=0 ;;
        --no-benchmarks) benchmarks=0 ;;
        -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "gpu_check: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
bundle=$(cd "$bundle" && pwd) || { echo "gpu_check: no bundle folder: run make gpu-bundle" >&2; exit 2; }
mkdir -p "$out" && out=$(cd "$out" && pwd)
report=$out/gpu_check.md log=$out/gpu_check.log
: >"$report"; : >"$log"
started=$SECONDS
failed=()

say() { printf '%s\n' "$*" >>"$report"; }
# seconds left for a step: its own limit, or what is left of the budget (at least 10 s)
limit() { local left=$((budget - (SECONDS - started))); ((left < 10)) && left=10; echo $(($1 < left ? $1 : left)); }
# run STEP_NAME LIMIT_S COMMAND...: output to the log (and to $step_out), status in $step_rc
run_step() {
    local name=$1 seconds; seconds=$(limit "$2"); shift 2
    local t0=$SECONDS
    printf '\n===== %s (limit %ss): %s\n' "$name" "$seconds" "$*" >>"$log"
    # to a file, not through a pipe: a process the step leaves behind (a Ray daemon) would
    # hold a pipe open, and the check would wait for it
    timeout --kill-after=10 "$seconds" "$@" >"$out/.step" 2>&1; step_rc=$?
    step_out=$(cat "$out/.step"); rm -f "$out/.step"
    printf '%s\n' "$step_out" >>"$log"
    step_s=$((SECONDS - t0))
    if ((step_rc == 124 || step_rc == 137)); then
        step_note="timed out after ${seconds} s"
        # (a killed driver's local Ray goes with it: Ray starts its daemons to die with
        # their parent; never `ray stop`, which would end every Ray on the machine)
    else
        step_note="exit $step_rc"
    fi
    echo "gpu_check: $name: $step_note, ${step_s} s" >&2
}

say "# GPU check"
say ""
say "| | |"
say "| --- | --- |"
say "| date (UTC) | $(date -u '+%Y-%m-%d %H:%M') |"
say "| mode | $( ((dry_run)) && echo 'dry run (no CUDA needed)' || echo 'GPU') |"
say "| bundle | $(basename "$bundle"): $(ls "$bundle"/*.whl 2>/dev/null | wc -l) wheels, $(du -sm "$bundle" | cut -f1) MiB, built from commit $("$python" -c 'import json,sys; print(json.load(open(sys.argv[1])).get("commit", "unknown"))' "$bundle/bundle.json" 2>/dev/null || echo unknown) |"
say "| host | $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 2^20}' /proc/meminfo) memory |"
if command -v nvidia-smi >/dev/null; then
    say "| nvidia-smi | $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1) |"
fi

# ---- the venv: the machine's interpreter and packages, plus the bundle
venv=$(mktemp -d "${TMPDIR:-/tmp}/usv_ray_gpu.XXXXXX")/venv
run_step venv 60 "$python" -m venv --without-pip --system-site-packages "$venv"
# The machine's python3 may itself be a venv (there: /opt/torch/.venv), whose packages a
# venv made from it does not see (its "system" is the base interpreter's): name them in a
# .pth, after the venv's own site-packages, so the bundle's wheels come first.
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
{
    "$python" -c 'import site; print("\n".join(site.getsitepackages()))'
    for dir in "${base_sites[@]}"; do (cd "$dir" && pwd); done
} >"$site/_machine_site.pth"

# the project without its pins (its torch pin is not the machine's torch), then what Ray and
# the project need, from the bundle where the machine does not have it
requirements=$("$python" -c 'import json,sys; print(" ".join(json.load(open(sys.argv[1]))["requirements"]))' "$bundle/bundle.json")
# the machine's pip, run for the venv (which has none of its own); where that python has no
# pip (a CPU dry run on a distribution's python3), the project's uv
if "$python" -m pip --version >/dev/null 2>&1; then
    pip=("$python" -m pip --python "$venv/bin/python" --disable-pip-version-check install
        --no-index --find-links "$bundle" --no-cache-dir --no-compile)
else
    uv=$(command -v uv || echo "$here/.tools/bin/uv")
    pip=("$uv" pip install --python "$venv/bin/python" --no-index --find-links "$bundle"
        --no-cache)
fi
run_step "install the project" 60 "${pip[@]}" --no-deps "$bundle"/usv_ray-*.whl
install_rc=$step_rc install_s=$step_s
if ((install_rc == 0)); then
    # shellcheck disable=SC2086  # the requirements are words
    run_step "install Ray and the rest" 180 "${pip[@]}" $requirements
    install_rc=$step_rc install_s=$((install_s + step_s))
fi
py=$venv/bin/python
say "| install | $( ((install_rc == 0)) && echo ok || echo "FAILED ($step_note, see gpu_check.log)"), ${install_s} s |"

# ---- what the venv has: versions, the device, and the packages the bundle leaves out
run_step environment 60 "$py" - <<'EOF'
import importlib, platform
import torch
print(f"| python | {platform.python_version()} |")
print(f"| torch | {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()} |")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"| device | {torch.cuda.get_device_name(0)}, {p.total_memory / 2**30:.0f} GiB, "
          f"capability {p.major}.{p.minor}, bf16 {torch.cuda.is_bf16_supported()} |")
else:
    print("| device | no CUDA |")
import importlib.metadata, os, sys
found = []
for name, dist in (("ray", "ray"), ("usv_ray", "usv_ray"), ("pytest", "pytest"),
                   ("cv2", "opencv-python-headless"), ("numba", "numba"),
                   ("matplotlib", "matplotlib"), ("av", "av"), ("pydicom", "pydicom")):
    try:
        module = importlib.import_module(name)
        # from the bundle (installed in this venv), this source tree (python puts the
        # current folder first: the tests import the tree's usv_ray) or the machine
        where = ("bundle" if module.__file__.startswith(sys.prefix) else
                 "source tree" if module.__file__.startswith(os.getcwd()) else "machine")
        found.append(f"{name} {importlib.metadata.version(dist)} ({where})")
    except Exception as error:  # noqa: BLE001  # any failure is a finding here
        found.append(f"{name} MISSING ({type(error).__name__})")
print(f"| modules | {', '.join(found)} |")
EOF
printf '%s\n' "$step_out" | grep '^| ' >>"$report"
cuda=$("$py" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)
ready=1  # the rest runs (each step on its own: one failing does not stop the next)
if ((install_rc != 0)); then
    failed+=(install) ready=0
elif ((!cuda && !dry_run)); then
    say ""
    say "No CUDA device: nothing else ran (use --dry-run on a machine without a GPU)."
    failed+=("no CUDA") ready=0
fi

if ((ready)); then
    # ---- Ray itself (the slim wheel) on the CPU: a local Ray and a 1-worker Ray Train fit,
    # so that a broken Ray reads as such and not as every test failing; the dry run (CI)
    # starts Ray and runs a task, but no Train fit (a minute on 2 cores)
    run_step "Ray smoke test" 120 "$py" - "$(dirname "$venv")" "$dry_run" <<'EOF'
import os, sys, time
os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.1"  # as tests/conftest.py
import ray, ray.train
from ray.train.torch import TorchTrainer
started = time.perf_counter()
ray.init(num_cpus=2, include_dashboard=False, logging_config=ray.LoggingConfig(log_level="ERROR"))
resources = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
if sys.argv[2] == "1":  # dry run
    import ray.data, ray.tune
    assert ray.get(ray.remote(lambda: 1).remote()) == 1
    ran = "a task ran (dry run: no Train fit)"
else:
    def loop(config):
        ray.train.report({"ok": 1})
    trainer = TorchTrainer(loop, scaling_config=ray.train.ScalingConfig(num_workers=1),
                           run_config=ray.train.RunConfig(storage_path=sys.argv[1], name="smoke"))
    assert trainer.fit().error is None
    ran = "a 1-worker Train fit ran"
ray.shutdown()
print(f"| Ray smoke test | {ran}, {time.perf_counter() - started:.0f} s; Ray sees {resources} |")
EOF
    printf '%s\n' "$step_out" | grep '^| ' >>"$report" || say "| Ray smoke test | FAILED ($step_note, see gpu_check.log) |"
    ((step_rc == 0)) || failed+=("Ray smoke test")
fi

if ((ready && tests)); then
    # ---- the gpu-marked tests
    say ""
    say "## Tests (\`pytest -m gpu tests/test_gpu.py\`)"
    say ""
    # only the bundle's pytest: the machine's own plugins (xdist, cov, ...) may not fit it
    run_step tests 240 env PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 "$py" -m pytest -m gpu tests/test_gpu.py -p no:cacheprovider -v -rA \
        -o faulthandler_timeout=200 --junitxml="$out/gpu_tests.xml"
    tests_rc=$step_rc
    say "$step_note, ${step_s} s"
    say ""
    "$py" - "$out/gpu_tests.xml" "$log" >>"$report" 2>>"$log" <<'EOF'
import sys
import xml.etree.ElementTree as ET
print("| test | result | s | note |")
print("| --- | --- | --- | --- |")
try:
    cases = ET.parse(sys.argv[1]).getroot().iter("testcase")
except (OSError, ET.ParseError):
    cases = []  # killed at its limit: the outcomes pytest -v printed as it went
    for line in open(sys.argv[2], errors="replace"):
        if line.startswith("tests/test_gpu.py::") and " " in line:
            name, outcome = line.split()[:2]
            print(f"| {name.split('::')[1]} | {outcome} | | |")
for case in cases:
    result, note = "passed", ""
    for tag in ("failure", "error", "skipped"):
        found = case.find(tag)
        if found is not None:
            result = {"failure": "FAILED", "error": "ERROR", "skipped": "skipped"}[tag]
            note = (found.get("message") or "").splitlines()[0][:160] if found.get("message") else ""
    note = note.replace("|", "/")
    print(f"| {case.get('name')} | {result} | {float(case.get('time', 0)):.1f} | {note} |")
EOF
    # the figures the tests print (lines "gpu figure: ...")
    grep -h '^gpu figure: ' "$log" | sed 's/^gpu figure: /- /' >>"$report"
    ((tests_rc == 0)) || failed+=(tests)
fi

if ((ready && benchmarks)); then
    # ---- the benchmarks' GPU sections
    say ""
    say "## Benchmarks, GPU sections"
    for bench in "classify.py --gpu-only:100" "reid.py --gpu-only:50" \
        "index.py --quick --sections embedding-gpu:80" "predict.py --quick --gpu-only:60" \
        "track.py --quick --gpu-only:60"; do
        args=${bench%:*} seconds=${bench##*:}
        # shellcheck disable=SC2086  # the arguments are words
        run_step "benchmarks/$args" "$seconds" "$py" benchmarks/$args
        say ""
        say "### \`benchmarks/$args\`: $step_note, ${step_s} s"
        say ""
        say '```'
        printf '%s\n' "$step_out" | grep -v '^\s*$' | tail -n 40 >>"$report"
        say '```'
        ((step_rc == 0)) || failed+=("benchmarks/${args%% *}")
    done
fi

say ""
if ((${#failed[@]})); then
    say "**Result: FAILED** (${failed[*]}), $((SECONDS - started)) s in all."
else
    say "**Result: passed**, $((SECONDS - started)) s in all."
fi
rm -rf "$(dirname "$venv")"
echo "gpu_check: report in $report" >&2
cat "$report"
((${#failed[@]} == 0))
