"""The verifier: P(an answer is good) from the prompt and a cheap model's answer, for cascades (answer with a
cheap model first, escalate when the verifier doubts). Served as `Classifier/Verify` by the classifier service."""
