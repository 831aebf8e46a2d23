"""The training core: data, synthetic data, U-Net, loss, training and inference (Keras)."""
