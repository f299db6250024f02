"""The worker's model cache: backbones loaded when a job first needs them, kept LRU, and their pipelines.

Only the worker thread calls it (it owns the device). Nothing is imported from
the model code until a pipeline is asked for.
"""

from __future__ import annotations

import dataclasses
import json
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from framepack_history.config.fields import resolve
from framepack_history.device import RNG_LOCK, free_device_memory

if TYPE_CHECKING:
    from framepack_history.config.presets import Preset
    from framepack_history.generation.pipeline import Pipeline
    from framepack_history.jobs.store import JobSpec


class ModelCache:
    """At most ``max_models`` backbones (with their memory managers); one pipeline per encoder rate and mode.

    Each worker (one per device) has its own cache, so each device has its own models and memory manager.
    """

    def __init__(self, max_models: int = 2) -> None:
        self.max_models = max_models
        self._backbones: OrderedDict[str, Any] = OrderedDict()
        self._pipelines: dict[tuple[str, str | None, bool], Any] = {}
        self.loads = 0  # how many times a backbone was loaded (tests check the cache)

    def pipeline_for(self, preset: Preset, spec: JobSpec) -> Pipeline:
        """The cached pipeline for (model spec + hardware, encoder rate, needs an encoder)."""
        from framepack_history.generation.loading import (  # torch: kept off the page's import path
            build_encoder,
            fits_beside,
            load_for_device,
        )
        from framepack_history.generation.pipeline import Pipeline  # torch: kept off the page's import path

        needs = resolve(spec.request, preset).history_mode == "encoder"
        rate = (spec.encoder_rate or preset.model.encoder_rate) if needs else None
        model_key = json.dumps([dataclasses.asdict(preset.model), dataclasses.asdict(preset.hardware)], sort_keys=True)
        key = (model_key, rate, needs)
        if model_key not in self._backbones:
            # evict the least recently used backbone (one large one per device unless the budget holds two)
            while self._backbones and (len(self._backbones) >= self.max_models
                                       or not fits_beside(preset, list(self._backbones.values()))):
                old, (_, memory) = self._backbones.popitem(last=False)
                if memory is not None:
                    memory.unload()
                for k in [k for k in self._pipelines if k[0] == old]:
                    del self._pipelines[k]
                free_device_memory()
            with RNG_LOCK:  # random initial weights are seeded: no other worker may draw meanwhile
                self._backbones[model_key] = load_for_device(preset)  # (backbone, memory manager or None)
            self.loads += 1
        self._backbones.move_to_end(model_key)
        if key not in self._pipelines:
            backbone, memory = self._backbones[model_key]
            with RNG_LOCK:
                encoder = build_encoder(preset.model, backbone, rate) if needs else None
            self._pipelines[key] = Pipeline(backbone, encoder, preset, memory=memory)
        pipe = self._pipelines[key]
        pipe.preset = preset  # sampling/video defaults may have changed; the weights did not
        return pipe

    @property
    def loaded(self) -> bool:
        """Whether any backbone is held (an idle unload has something to give back)."""
        return bool(self._backbones)

    def end_job(self) -> None:
        """After a job: each pipeline drops the job's generation and trims its prompt cache; the device's cached blocks go back.

        The backbones stay (reloading costs the next job its start); :meth:`clear` drops them.
        """
        for pipe in self._pipelines.values():
            pipe.end_job()
        free_device_memory()

    def clear(self) -> int:
        """Unload every backbone and pipeline and give the device memory back; returns how many backbones were held.

        The next job loads again (:attr:`loads` counts it).
        """
        held = len(self._backbones)
        for _, memory in self._backbones.values():
            if memory is not None:
                memory.unload()
        self._pipelines.clear()
        self._backbones.clear()
        free_device_memory()
        return held
