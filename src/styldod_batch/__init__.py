"""styldod-batch: stream bulk image files into pre-signed PUTs and place Styldod orders."""
