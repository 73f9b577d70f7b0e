"""The re-ID bundle keeps the tau swept for a model as long as it holds that model."""

from usv_ray.reid.bundle import model_id_of, record_tau, write_reid_bundle


def test_a_retrained_reid_bundle_keeps_the_tau_of_a_model_it_still_holds(tmp_path):
    cm, vm = tmp_path / "CM.pt", tmp_path / "VM.pt"
    cm.write_bytes(b"cm weights")
    vm.write_bytes(b"vm weights")
    record = write_reid_bundle(tmp_path / "reid", {"CM": cm, "VM": vm}, {})
    cm_id = model_id_of("CM", record["files"]["CM.pt"]["sha256"])
    record_tau(tmp_path / "reid", cm_id, 0.02, 0.8, tmp_path / "sweep")
    again = write_reid_bundle(tmp_path / "reid", {"CM": cm, "VM": vm}, {})  # the same CM
    assert again["tau"][cm_id]["tau"] == 0.02
    vm.write_bytes(b"vm weights, retrained")
    assert cm_id in write_reid_bundle(tmp_path / "reid", {"CM": cm, "VM": vm}, {})["tau"]
    cm.write_bytes(b"cm weights, retrained")  # another CM: its tau must be swept again
    assert write_reid_bundle(tmp_path / "reid", {"CM": cm, "VM": vm}, {})["tau"] == {}
