"""PyTorch frontend (private): custom ops, autograd, device dispatch and ONNX, one module per op family.

Imported only when a tensor reaches a public function (or by ``roipool.nn``),
so ``import roipool`` never imports torch.
"""
