"""Device memory: a planner (how many bytes go where) and the mechanism that carries it out.

* :mod:`.planner` — pure arithmetic from configs on the ``meta`` device:
  :func:`plan` predicts the device and host peak of every phase of a request
  and chooses a :class:`Strategy` (resident DiT blocks, streamed blocks,
  text-encoder quantisation, VAE tiling) that fits the :class:`~.budget.Budget`;
* :mod:`.budget` — the device and host budgets and the CUDA allowance they keep back;
* :mod:`.streaming` / :mod:`.manager` — which tensors move: DiT blocks
  streamed from pinned host memory one block ahead of the computation,
  components made resident by hooks when their code runs and evicted when
  the room is needed, and a residency ledger that measures what sat on the
  device (strict mode: a module run off the device raises);
* :mod:`.measure` — live tensor bytes without a GPU (also on ``meta``);
* :mod:`.encode_chunks` — how a video to continue is split into VAE calls (the encode and the plan share it);
* :mod:`.components` — a preset's models on the ``meta`` device (shapes and sizes, no weights);
* :mod:`.oom` — recognising out-of-memory and asking for a more conservative plan.
"""
