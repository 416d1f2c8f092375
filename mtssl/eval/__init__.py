"""Evaluation of pretrained encoders, one module per protocol (as big_vision
keeps its evaluators): nothing here is imported by the data or model
packages; pretraining imports `dense` for its periodic held-out metrics.

  dense           depth / normals / contour metrics of a run on held-out
                  scenes, the target domain and NYUv2 (python -m mtssl.eval.dense)

Every command takes --config=configs/<command>.py and --workdir (mtssl.cli).
  dense_metrics   the metrics themselves
  classification  losses, AP and mAP shared by probes and fine-tuning
  linear_probe    frozen-feature linear probes (python -m mtssl.eval.linear_probe)
  finetune        whole-network transfer (python -m mtssl.eval.finetune)
  diagnose        checkpoint diagnostics (python -m mtssl.eval.diagnose)
"""
