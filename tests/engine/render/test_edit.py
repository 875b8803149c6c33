"""Boundary fitting (linear SVM), edits, boundary files."""
import numpy as np
import pytest
import torch

from engine.render import edits
from engine.nets import eg3d


def _synthetic(n=3000, dim=64, seed=0, noise=0.3):
    rng = np.random.default_rng(seed)
    truth = rng.standard_normal(dim)
    truth /= np.linalg.norm(truth)
    w = rng.standard_normal((n, dim)) * rng.uniform(0.5, 2.0, dim) + rng.standard_normal(dim)  # anisotropic, offset
    scores = w @ truth + noise * rng.standard_normal(n)
    return w, scores, truth


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fitted_normal_matches_the_true_direction(seed):
    w, s, truth = _synthetic(seed=seed)
    b = edits.fit_boundary(w, s, np.random.default_rng(seed), name="smile", scorer="synthetic")
    cos = float(np.dot(b.normal.numpy().astype(np.float64), truth))
    assert cos > 0.95
    assert abs(float(b.normal.norm()) - 1) < 1e-5
    assert b.accuracy > 0.9 and b.d > 0 and b.n_samples == len(s)


def test_edit_raises_a_nonlinear_scorer_monotonically():
    w, s, truth = _synthetic(seed=2)
    b = edits.fit_boundary(w, s, np.random.default_rng(0))
    scorer = lambda x: np.tanh(x @ truth / 3.0)  # noqa: E731  monotone in w . truth
    ws = torch.from_numpy(w[:5]).float().unsqueeze(1).repeat(1, 3, 1)  # [5,3,D]
    values = []
    for d in np.linspace(-4, 4, 9):
        edited = edits.apply_edit(ws, b.normal, float(d))
        values.append(scorer(edited[:, 0].double().numpy()))
    values = np.stack(values)  # [9,5]
    assert (np.diff(values, axis=0) > 0).all()


def test_fit_drops_unscored_samples_and_rejects_degenerate_input():
    w, s, _ = _synthetic(n=400)
    s[::3] = np.nan
    b = edits.fit_boundary(w, s, np.random.default_rng(0))
    assert b.n_samples == 400 - len(range(0, 400, 3))
    with pytest.raises(ValueError, match="overlap"):
        edits.fit_boundary(w, np.zeros(400), np.random.default_rng(0))
    with pytest.raises(ValueError, match="need at least 2"):
        edits.fit_boundary(w[:10], s[:10], np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        edits.fit_boundary(w[:, :, None], s, np.random.default_rng(0))


def test_apply_edit_layers_and_sequences():
    ws = torch.zeros(1, 14, 8)
    n = torch.nn.functional.normalize(torch.arange(8.0) + 1, dim=0)
    out = edits.apply_edit(ws, n, 2.0, layers=(0, 8))
    assert torch.allclose(out[0, :8], 2 * n.expand(8, 8)) and torch.equal(out[0, 8:], ws[0, 8:])
    seq = edits.apply_edit(ws, n, [0.0, 1.0, 2.0])
    assert seq.shape == (3, 14, 8) and torch.equal(seq[0], ws[0]) and torch.allclose(seq[2, 5], 2 * n)
    with pytest.raises(ValueError, match="layer range"):
        edits.apply_edit(ws, n, 1.0, layers=(10, 20))
    with pytest.raises(ValueError, match="normal must be"):
        edits.apply_edit(ws, torch.ones(5), 1.0)
    # an edit and its inverse compose back to the avatar's latent
    w = torch.randn(1, 14, 8)
    torch.testing.assert_close(edits.apply_edit(edits.apply_edit(w, n, 1.5), n, -1.5), w)


def test_boundary_file_roundtrip_digest_and_corruption(tmp_path):
    G = eg3d.slim_generator("slim128", seed=0)
    digest = edits.generator_digest(G)
    assert digest == edits.generator_digest(eg3d.slim_generator("slim128", seed=0))
    assert digest != edits.generator_digest(eg3d.slim_generator("slim128", seed=1))
    w, s, _ = _synthetic(dim=G.w_dim, n=300)
    b = edits.fit_boundary(w, s, np.random.default_rng(0), name="smile", layers=(0, 8))
    bset = edits.BoundarySet(digest, "slim128", {"smile": b}, for_tests_only=True)
    path = tmp_path / "b.safetensors"
    edits.save_boundaries(bset, path)
    back = edits.load_boundaries(path, expected_digest=digest)
    assert back.names() == ["smile"] and back.for_tests_only and back.get("smile").layers == (0, 8)
    assert torch.equal(back.get("smile").normal, b.normal) and back.get("smile").d == pytest.approx(b.d)
    with pytest.raises(edits.BoundaryMismatchError) as e:
        edits.load_boundaries(path, expected_digest="f" * 64)
    assert e.value.key == "boundaries_generator_mismatch"
    with pytest.raises(edits.ExpressionUnavailableError):
        back.get("anger")
    # a non-unit normal is refused on save and on load
    bad = edits.BoundarySet(digest, "slim128", {"smile": edits.Boundary("smile", b.normal * 2, d=1.0)})
    with pytest.raises(edits.BoundaryFileError, match="length"):
        edits.save_boundaries(bad, path)
    from safetensors.torch import save_file
    save_file({"normal.smile": b.normal * 2}, str(tmp_path / "bad.safetensors"),
              metadata={"format": edits.FORMAT, "version": "1", "generator_digest": digest,
                        "boundaries": '{"smile": {"d": 1.0}}'})
    with pytest.raises(edits.BoundaryFileError, match="length"):
        edits.load_boundaries(tmp_path / "bad.safetensors")
    save_file({"normal.smile": b.normal}, str(tmp_path / "v9.safetensors"),
              metadata={"format": edits.FORMAT, "version": "9", "generator_digest": digest, "boundaries": "{}"})
    with pytest.raises(edits.BoundaryFileError, match="version"):
        edits.load_boundaries(tmp_path / "v9.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(edits.BoundaryFileError) as e:
        edits.load_boundaries(tmp_path / "junk.safetensors")
    assert e.value.key == "boundaries_invalid"
    with pytest.raises(edits.BoundaryFileError, match="does not exist"):
        edits.load_boundaries(tmp_path / "missing.safetensors")
