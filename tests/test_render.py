import imageio.v3 as iio
import numpy as np

from uad import render


def test_colour_scale_ends_and_threshold_in_the_middle():
    lut = render.colorize(np.array([0.0, 0.5, 1.0]))
    assert lut.shape == (3, 3) and lut.dtype == np.uint8
    assert tuple(lut[0]) == (0, 0, 127) and tuple(lut[-1]) == (127, 0, 0)
    scaled = render.heat_scale(np.array([1.0, 3.0, 5.0, 100.0, -4.0]), normal_median=1.0, threshold=3.0)
    np.testing.assert_allclose(scaled, [0.0, 0.5, 1.0, 1.0, 0.0])


def test_frame_has_four_panels_and_marks_the_prediction():
    image = np.full((32, 32, 3), 128, np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[:8, :8] = 1
    scores = np.zeros((32, 32), np.float32)
    scores[20:, 20:] = 10.0
    f = render.frame(image, mask, scores, normal_median=0.0, threshold=1.0, image_score=10.0, image_threshold=2.0,
                     name="crack/000")
    s = render.MIN_PANEL // 32  # small inputs are enlarged for readability
    top = render._TITLE_H
    assert f.shape[1] == 4 * 32 * s and f.shape[0] > top + 32 * s
    body = f[top: top + 32 * s].astype(int)
    gt, pred = body[:, 32 * s: 64 * s], body[:, 96 * s: 128 * s]
    assert gt[2 * s, 2 * s, 1] > gt[2 * s, 2 * s, 0] + 50  # green where the ground truth is
    assert pred[28 * s, 28 * s, 0] > pred[28 * s, 28 * s, 1] + 50  # red where score > threshold
    assert abs(pred[12 * s, 12 * s, 0] - pred[12 * s, 12 * s, 1]) < 5  # nothing predicted there
    footer = f[top + 32 * s:].astype(int)
    verdict = footer[:render._CAPTION_H, -60:]
    assert (verdict[..., 0] > verdict[..., 1] + 100).any()  # ANOMALY in red (score 10 > 2)
    bar = footer[render._CAPTION_H + 2: render._CAPTION_H + 10, 8:-8]
    assert (bar[:, 0, 2] > bar[:, 0, 0]).all() and (bar[:, -1, 0] > bar[:, -1, 2]).all()  # blue to red


def test_a_normal_verdict_is_green():
    image = np.full((32, 32, 3), 128, np.uint8)
    f = render.frame(image, np.zeros((32, 32)), np.zeros((32, 32), np.float32), normal_median=0.0, threshold=1.0,
                     image_score=0.5, image_threshold=2.0, name="good/000").astype(int)
    verdict = f[render._TITLE_H + render.MIN_PANEL: render._TITLE_H + render.MIN_PANEL + render._CAPTION_H, -60:]
    assert (verdict[..., 1] > verdict[..., 0] + 100).any() and not (verdict[..., 0] > verdict[..., 1] + 100).any()


def test_render_gif_writes_evenly_spread_frames(tmp_path):
    n = 10
    images = np.random.default_rng(0).integers(0, 255, (n, 24, 24, 3), np.uint8)
    masks = np.zeros((n, 24, 24), np.uint8)
    maps = np.random.default_rng(1).random((n, 24, 24)).astype(np.float32)
    count = render.render_gif(tmp_path / "g" / "x.gif", images, masks, maps, [f"good/{i}" for i in range(n)],
                              maps.reshape(n, -1).max(1), normal_median=0.2, threshold=0.8, image_threshold=0.9,
                              frame_ms=100, max_frames=4)
    frames = iio.imread(tmp_path / "g" / "x.gif", index=None)
    assert count == 4 and frames.shape[0] == 4 and frames.shape[2] == 4 * render.MIN_PANEL


def test_gif_frames_keep_their_colours_and_timing(tmp_path):
    """Quantised to 256 colours, a decoded frame stays close to the RGB frame it came from."""
    n, side = 3, 64
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    images = np.stack([np.stack([np.add.outer(ramp, ramp) / 2, np.tile(ramp, (side, 1)),
                                 np.full((side, side), 40.0 * i)], -1) for i in range(n)]).astype(np.uint8)
    masks = np.zeros((n, side, side), np.uint8)
    masks[:, 10:20, 10:20] = 1
    maps = np.tile(np.linspace(0, 1, side, dtype=np.float32), (n, side, 1))
    kwargs = dict(normal_median=0.2, threshold=0.6)
    render.render_gif(tmp_path / "x.gif", images, masks, maps, ["a", "b", "c"], maps.reshape(n, -1).max(1),
                      image_threshold=0.5, frame_ms=250, max_frames=n, **kwargs)
    decoded = iio.imread(tmp_path / "x.gif", index=None)[..., :3].astype(int)
    for i in range(n):
        expected = render.frame(images[i], masks[i], maps[i], image_score=1.0, image_threshold=0.5, name="abc"[i],
                                **kwargs)
        assert decoded[i].shape == expected.shape
        assert np.abs(decoded[i] - expected).mean() < 4
    assert iio.immeta(tmp_path / "x.gif", index=0)["duration"] == 250
