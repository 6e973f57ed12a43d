"""Training the reference models (scripts/train_*.py are thin command lines over this package): the
learning-rate schedules, the narrow MNIST / Fashion-MNIST ViT and its data, checkpoint saving."""
