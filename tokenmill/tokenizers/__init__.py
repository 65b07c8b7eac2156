"""Pure model and codebook code: numpy/torch/faiss in, arrays out. No Beam imports."""
