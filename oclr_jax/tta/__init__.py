"""RGB test-time adaptation of OCLR's flow-only masks with DINO ViT-S/8 (paper App. C).

Modules (one concern each):
  vit.py          the DINO ViT in Flax, parameter-compatible with facebookresearch/dino.
  dino_port.py    DINO PyTorch state_dict (.pth) <-> Flax params (torch imported lazily).
  preprocess.py   input size rule, RGB normalisation, masks <-> patch-grid labels.
  loss.py         tri-maps and the InfoNCE loss of eqs. 7-9; frame pairs.
  finetune.py     the jitted per-sequence fine-tuning of the last blocks (optax).
  propagation.py  top-k affinity label propagation with a window of context frames.
  keyframe.py     key-frame selection by the L1 disagreement of propagated and flow masks.
  adapt.py        `adapt_sequence(rgb_frames, flow_masks, vit_params, config)`: the driver.
  eval_hook.py    `TTARefiner`: the evaluation's per-sequence refine hook (`--tta dino`).

Importing this package imports neither torch nor TensorFlow.
"""
