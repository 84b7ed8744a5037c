"""Inference: the runtime, the Preprocessor, batched inference, study collection and the Model."""
