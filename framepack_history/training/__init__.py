"""Training and evaluation of the history encoder and the next-section DiT.

* :mod:`.vae` trains the toy VAE (the toy backbone has no pretrained one);
* :mod:`.stage1_frame_query` is Stage I, frame-query pretraining: the DiT
  must retrieve randomly chosen history frames from the embedding alone;
* :mod:`.stage2_autoregressive` is Stage II, next-section finetuning with
  the embedding of the whole preceding history as context;
* :mod:`.evaluate` scores retrieval (PSNR/SSIM by history position) and
  revisit consistency (pan away and back, leave and return);
* :mod:`.prepare` is ``prepare-data``: a folder of captioned videos encoded
  once into latent clips with their text and start-image embeddings, which
  the stages read as ``[data] kind = "prepared"`` with no encoder loaded.
* :mod:`.plan` predicts what a Stage I or II config needs per GPU (device and
  host bytes, FLOPs per step) and which cards it fits (``plan --train``).

Every stage runs under ``accelerate launch`` (CPU, one or many GPUs) and is
started with ``python -m framepack_history train STAGE --config FILE``.
"""

STAGES = ("vae", "stage1", "stage2")
