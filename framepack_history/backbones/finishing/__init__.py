"""The learned finishing models, one file each, in the key layouts their released weights use.

* :mod:`.rrdbnet` — ESRGAN's RRDBNet as Real-ESRGAN saves it (RealESRGAN_x4plus, _x2plus, anime_6B);
* :mod:`.srvgg` — SRVGGNetCompact (realesr-animevideov3, realesr-general-x4v3): small and fast, made for video;
* :mod:`.rife` — RIFE's IFNet of Practical-RIFE 4.25/4.26: the frame between two frames at any timestep.

They are written here rather than loaded through a model zoo: spandrel, the loader ComfyUI uses,
imports its whole registry and with it torchvision, which does not import beside this project's
torch. Which file is which model (and with which sizes) is read from its keys and shapes by
:mod:`framepack_history.hub.finishing_weights`, without torch; :mod:`framepack_history.generation.learned`
builds and runs them.
"""
