"""Downstream use of DINOv2 backbones, installed with the package: frozen-feature extraction (`features`), the
linear probe (`linear_probe`), PCA pictures of patch features (`pca`), the labelled data the examples use
(`data`) and the end-to-end demo behind `dinov2-demo` (`demo`). The runnable scripts are in the repository's
`examples/` folder."""
