"""FramePack's start-image resize and section count (lllyasviel/FramePack, ``demo_gradio_f1.py``)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from framepack_history.config.presets import VideoSpec, load_preset
from framepack_history.generation.video import read_image
from framepack_history.memory.planner import plan
from tests.conftest import TINY_HUNYUAN


def framepack_resize_and_center_crop(image: np.ndarray, target_width: int, target_height: int) -> np.ndarray:
    """diffusers_helper/utils.py ``resize_and_center_crop``, as FramePack's demo calls it on the start image."""
    if target_height == image.shape[0] and target_width == image.shape[1]:
        return image
    pil_image = Image.fromarray(image)
    original_width, original_height = pil_image.size
    scale_factor = max(target_width / original_width, target_height / original_height)
    resized_width = int(round(original_width * scale_factor))
    resized_height = int(round(original_height * scale_factor))
    resized_image = pil_image.resize((resized_width, resized_height), Image.LANCZOS)
    left = (resized_width - target_width) / 2
    top = (resized_height - target_height) / 2
    right = (resized_width + target_width) / 2
    bottom = (resized_height + target_height) / 2
    return np.array(resized_image.crop((left, top, right, bottom)))


@pytest.mark.parametrize(("source", "target"), [
    ((101, 37), (64, 48)),  # wide: cropped left and right, odd margins
    ((30, 91), (64, 64)),  # tall, upscaled
    ((640, 480), (640, 480)),  # already the size: untouched
    ((1280, 721), (832, 480)),  # FramePack's 480p bucket
    ((77, 77), (48, 80)),
])
def test_read_image_is_framepacks_lanczos_resize_and_center_crop(tmp_path, source, target) -> None:
    rng = np.random.default_rng(sum(source))
    pixels = (rng.random((source[1], source[0], 3)) * 255).astype(np.uint8)
    path = tmp_path / "start.png"
    Image.fromarray(pixels).save(path)
    ours = read_image(path, *target)
    ref = framepack_resize_and_center_crop(pixels, *target)
    assert ours.shape == (target[1], target[0], 3)
    assert np.array_equal(ours, ref)
    if source != target:  # and not the old bicubic fit
        from PIL import ImageOps

        bicubic = np.asarray(ImageOps.fit(Image.fromarray(pixels), target, method=Image.Resampling.BICUBIC))
        assert not np.array_equal(ours, bicubic)


F1 = VideoSpec(width=832, height=480, fps=30, section_frames=36)  # FramePack-F1: latent_window_size 9 -> 36 frames


def framepack_sections(seconds: float, latent_window_size: int = 9) -> int:
    """demo_gradio_f1.py's ``total_latent_sections``."""
    total_latent_sections = (seconds * 30) / (latent_window_size * 4)
    return int(max(round(total_latent_sections), 1))


def test_five_seconds_are_four_sections_as_framepack() -> None:
    assert F1.sections(5) == framepack_sections(5) == 4


@pytest.mark.parametrize("seconds", [0.1, 0.5, 0.6, 0.7, 1, 1.2, 1.8, 2, 2.4, 3, 3.6, 4.2, 5, 5.4, 6, 7.5, 9, 10, 30,
                                     60, 61.2, 120, 300, 600])
def test_section_count_is_framepacks(seconds) -> None:
    """Python's ``round``, halves to even: 1.8 s (1.5 sections) is 2, 3 s (2.5) is 2, 5.4 s (4.5) is 4."""
    assert F1.sections(seconds) == framepack_sections(seconds)


def test_pipeline_and_planner_count_the_same_sections(toy_pipeline) -> None:
    from framepack_history.generation.pipeline import Pipeline

    preset = load_preset(TINY_HUNYUAN)  # 8 fps, 5 frames a section: 0.625 s
    pipe = Pipeline(toy_pipeline.backbone, None, preset)
    for seconds, sections in ((0.5, 1), (1.0, 2), (1.5, 2), (1.6, 3), (3.1, 5)):
        assert pipe.sections_for(seconds) == preset.video.sections(seconds) == sections, seconds
        planned = {r.section for r in plan(preset, seconds) if r.section is not None}
        assert max(planned) + 1 == sections, seconds
