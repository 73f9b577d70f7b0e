import pytest
import torch

from usv_ray.models.lstm import EqualFrameLSTM, VariableFrameLSTM, pad_features, video_nll

D, H = 16, 8  # tiny feature and hidden sizes; the math does not depend on them
LENGTHS = [1, 7, 3, 30, 12]  # unsorted on purpose, one video of a single frame


def _batch(lengths, pad_value=0.0, dim=D):
    """Random per-video features and their padded batch."""
    sequences = [torch.randn(n, dim) for n in lengths]
    padded, lens = pad_features(sequences, pad_value=pad_value)
    return sequences, padded, lens


def _lstm(**kwargs):
    return VariableFrameLSTM(input_size=D, hidden_size=H, **kwargs).eval()


def _reference(model, seq):
    """One video alone through the plain modules, no packing: (frame_prob (T, C), video_prob)."""
    hidden, _ = model.lstm(seq[None])  # (1, T, H)
    frame_prob = model.head(hidden[0]).softmax(-1)  # (T, C)
    return frame_prob, frame_prob.mean(0)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_packed_batch_equals_each_video_alone(num_layers):
    torch.manual_seed(0)
    model = _lstm(num_layers=num_layers)
    sequences, padded, lens = _batch(LENGTHS)
    with torch.no_grad():
        video_prob, frame_prob = model(padded, lens, return_frames=True)
        assert video_prob.shape == (5, 2) and frame_prob.shape == (5, 30, 2)
        for i, seq in enumerate(sequences):
            ref_frames, ref_video = _reference(model, seq)
            alone = model(seq[None], torch.tensor([len(seq)]))  # batch of one, no padding
            torch.testing.assert_close(video_prob[i], ref_video, atol=1e-6, rtol=0)
            torch.testing.assert_close(alone[0], ref_video, atol=1e-6, rtol=0)
            torch.testing.assert_close(frame_prob[i, : len(seq)], ref_frames, atol=1e-6, rtol=0)
    torch.testing.assert_close(video_prob.sum(-1), torch.ones(5))


def test_padding_values_change_nothing():
    torch.manual_seed(1)
    model = _lstm()
    _, padded, lens = _batch(LENGTHS)
    real = torch.arange(padded.shape[1])[None, :] < lens[:, None]  # (B, T_max)
    outputs = []
    for fill in (torch.zeros_like(padded), torch.randn_like(padded), torch.full_like(padded, 1e6)):
        features = torch.where(real[..., None], padded, fill)
        with torch.no_grad():
            outputs.append(model(features, lens, return_frames=True))
    for video_prob, frame_prob in outputs[1:]:
        torch.testing.assert_close(video_prob, outputs[0][0], atol=0, rtol=0)
        torch.testing.assert_close(frame_prob, outputs[0][1], atol=0, rtol=0)


def test_mean_over_real_frames_only_and_zero_padding():
    torch.manual_seed(2)
    model = _lstm()
    _, padded, lens = _batch(LENGTHS)
    with torch.no_grad():
        video_prob, frame_prob = model(padded, lens, return_frames=True)
    for i, n in enumerate(lens.tolist()):
        torch.testing.assert_close(video_prob[i], frame_prob[i, :n].mean(0))
        assert torch.all(frame_prob[i, n:] == 0)
        torch.testing.assert_close(frame_prob[i, :n].sum(-1), torch.ones(n))


def test_batch_order_is_restored():
    torch.manual_seed(3)
    model = _lstm()
    _, padded, lens = _batch(LENGTHS)
    perm = torch.randperm(len(LENGTHS))
    with torch.no_grad():
        video_prob, frame_prob = model(padded, lens, return_frames=True)
        video_perm, frame_perm = model(padded[perm], lens[perm], return_frames=True)
    torch.testing.assert_close(video_perm, video_prob[perm], atol=1e-7, rtol=0)
    torch.testing.assert_close(frame_perm, frame_prob[perm], atol=1e-7, rtol=0)


@pytest.mark.parametrize("lengths", [LENGTHS, [1, 1, 1]])
def test_gradients_reach_lstm_and_head_not_padding(lengths):
    torch.manual_seed(4)
    model = _lstm().train()
    _, padded, lens = _batch(lengths)
    padded.requires_grad_(True)
    labels = torch.arange(len(lengths)) % 2
    loss = video_nll(model(padded, lens), labels)
    loss.backward()
    assert torch.isfinite(loss)
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        # With one frame per video the recurrent weights meet only h0 = 0: no gradient there.
        if max(lengths) > 1 or "weight_hh" not in name:
            assert param.grad.abs().sum() > 0, name
    real = torch.arange(padded.shape[1])[None, :] < lens[:, None]  # (B, T_max)
    assert torch.all(padded.grad[~real] == 0)  # padding never entered the graph
    assert padded.grad[real].abs().sum() > 0


def test_equal_frame_lstm_matches_variable_frame():
    torch.manual_seed(5)
    variable = _lstm()
    equal = EqualFrameLSTM(input_size=D, hidden_size=H).eval()
    equal.load_state_dict(variable.state_dict())
    features = torch.randn(4, 12, D)  # (B, N, D), the paper's 12-frame set
    with torch.no_grad():
        want_video, want_frames = variable(features, torch.full((4,), 12), return_frames=True)
        got_video, got_frames = equal(features, return_frames=True)
        assert torch.equal(equal(features), got_video)
    torch.testing.assert_close(got_video, want_video, atol=0, rtol=0)
    torch.testing.assert_close(got_frames, want_frames, atol=0, rtol=0)


@pytest.mark.parametrize(
    ("lengths", "match"),
    [
        ([3, 0, 2], "zero-length"),
        ([3, 5, 2], "exceeds"),
        ([3, 2], r"shape \(3,\)"),
    ],
)
def test_bad_lengths_raise(lengths, match):
    model = _lstm()
    features = torch.randn(3, 4, D)
    with pytest.raises(ValueError, match=match):
        model(features, torch.tensor(lengths))


def test_pad_features():
    sequences = [torch.ones(2, 3), torch.ones(4, 3), torch.ones(1, 3)]
    padded, lengths = pad_features(sequences, pad_value=-1.0)
    assert padded.shape == (3, 4, 3) and lengths.tolist() == [2, 4, 1]
    assert lengths.dtype == torch.int64 and lengths.device.type == "cpu"
    assert torch.all(padded[0, 2:] == -1) and torch.all(padded[1] == 1)
    with pytest.raises(ValueError, match="zero frames"):
        pad_features([torch.ones(2, 3), torch.ones(0, 3)])
    with pytest.raises(ValueError, match="at least one"):
        pad_features([])


def test_video_nll_is_nll_of_log_prob_and_finite_at_zero():
    video_prob = torch.tensor([[0.9, 0.1], [0.25, 0.75], [1.0, 0.0]])
    labels = torch.tensor([0, 1, 1])
    want = -torch.log(torch.tensor([0.9, 0.75, 1e-8])).mean()  # the 0 is clamped to 1e-8
    torch.testing.assert_close(video_nll(video_prob, labels), want)
