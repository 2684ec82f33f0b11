"""Building blocks shared by two or more models (norms, attention, embeddings, precision)."""
