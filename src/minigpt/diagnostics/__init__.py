"""Seeing inside training: autograd by example, the computation graph, gradient flow,
attention maps, curves, optimizer comparisons, TensorBoard and the HTML report."""
