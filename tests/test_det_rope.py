"""The rotary position embedding against a transcription of its definition (EVA-02's VisionRotaryEmbeddingFast,
as the reference Vim uses it), and the Vim option that applies it."""

from __future__ import annotations

import pytest
import torch

import vimamba
from vimamba.layers import VisionRope


def eva02_rope(dim: int, pt_seq_len: int, ft_seq_len: int, theta: float = 10000.0):
    """EVA-02's ``VisionRotaryEmbeddingFast.__init__`` for ``freqs_for='lang'``, written out without einops.

    The reference builds it with ``dim = embed_dim // 2``; the table spans ``2 * dim`` channels.
    """
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
    t = torch.arange(ft_seq_len) / ft_seq_len * pt_seq_len
    freqs = t[:, None] * freqs[None, :]                              # einsum('..., f -> ... f')
    freqs = freqs.repeat_interleave(2, dim=-1)                       # repeat('... n -> ... (n r)', r=2)
    rows = freqs[:, None, :].expand(ft_seq_len, ft_seq_len, -1)
    cols = freqs[None, :, :].expand(ft_seq_len, ft_seq_len, -1)
    freqs = torch.cat([rows, cols], dim=-1)                         # broadcat(..., dim=-1)
    return freqs.cos().view(-1, freqs.shape[-1]), freqs.sin().view(-1, freqs.shape[-1])


def eva02_rotate_half(x: torch.Tensor) -> torch.Tensor:
    """rearrange('... (d r) -> ... d r', r=2); (x1, x2) -> (-x2, x1); back."""
    pairs = x.reshape(*x.shape[:-1], -1, 2)
    return torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).reshape(x.shape)


@pytest.mark.parametrize("embed_dim,pt,grid", [(192, 14, 64), (64, 14, 8), (32, 14, 14), (384, 14, 20)])
def test_rope_matches_eva02_definition(embed_dim, pt, grid):
    cos_ref, sin_ref = eva02_rope(embed_dim // 2, pt, grid)
    rope = VisionRope(embed_dim, pt_grid=pt)
    sin, cos = rope.embed((grid, grid))
    assert sin.shape == cos.shape == (grid * grid, embed_dim)
    torch.testing.assert_close(cos, cos_ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(sin, sin_ref, rtol=0, atol=1e-6)

    x = torch.randn(2, grid * grid, embed_dim, dtype=torch.float64)
    expected = x * cos_ref.double() + eva02_rotate_half(x) * sin_ref.double()
    torch.testing.assert_close(rope(x, (grid, grid)), expected, rtol=1e-6, atol=1e-6)


def test_rope_is_a_rotation_and_leaves_the_class_token_alone():
    rope = VisionRope(64, pt_grid=14)
    x = torch.randn(1, 17, 64)
    y = rope(x, (4, 4), class_index=8)
    torch.testing.assert_close(y[:, 8], x[:, 8])
    # every channel pair is rotated, so norms of pairs are kept
    torch.testing.assert_close(y.reshape(1, 17, 32, 2).norm(dim=-1), x.reshape(1, 17, 32, 2).norm(dim=-1))
    # the first patch (position 0 on both axes) has zero angle
    torch.testing.assert_close(y[:, 0], x[:, 0])
    assert not torch.allclose(y[:, 1], x[:, 1])
    with pytest.raises(ValueError, match="do not fit a 4x4 grid"):
        rope(torch.randn(1, 15, 64), (4, 4))


def _vim(**kwargs):
    torch.manual_seed(0)
    return vimamba.create_model("vim_tiny_patch16_224", img_size=64, embed_dim=64, depth=2, num_classes=0,
                                class_token=False, global_pool="avg", **kwargs).eval()


def test_vim_rope_option_follows_the_reference_loop():
    """With rope the model equals the reference's loop: rotate hidden (and residual) before each block."""
    plain, rotated, both = _vim(), _vim(rope=True), _vim(rope=True, rope_residual=True)
    assert plain.state_dict().keys() == rotated.state_dict().keys()  # no extra parameters or buffers
    rotated.load_state_dict(plain.state_dict())
    both.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    rope = VisionRope(64, 14)
    with torch.no_grad():
        for model, rotate_residual in ((rotated, False), (both, True)):
            hidden, residual = model._embed(x), None
            for block in model.layers:
                hidden = rope(hidden, (4, 4))
                if residual is not None and rotate_residual:
                    residual = rope(residual, (4, 4))
                hidden, residual = block(hidden, residual)
            expected = model._finish(hidden, residual)
            torch.testing.assert_close(model.forward_features(x), expected)
        assert not torch.allclose(plain.forward_features(x), rotated.forward_features(x))
        assert not torch.allclose(rotated.forward_features(x), both.forward_features(x))
        last = rotated.forward_intermediates(x, indices=[1], intermediates_only=True, output_fmt="NLC")[0]
        torch.testing.assert_close(rotated.forward_features(x), rotated._final_norm(last, None))


def test_vim_rope_with_class_token_and_bad_options():
    model = vimamba.create_model("vim_tiny_patch16_224", img_size=64, embed_dim=64, depth=2, num_classes=3, rope=True)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    with pytest.raises(ValueError, match="needs rope=True"):
        vimamba.create_model("vim_tiny_patch16_224", embed_dim=64, depth=1, rope_residual=True)
