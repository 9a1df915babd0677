"""Training the verifier: answer data -> embeddings of prompt and answer + answer features -> one ONNX graph."""
