"""The recipe that builds the training and benchmark corpora of tokenmill's built-in models."""
