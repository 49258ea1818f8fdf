"""What only the training and evaluation scripts use: data path, loop, checkpoints, metrics, cards, arguments."""
