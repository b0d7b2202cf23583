"""The CAREER model and its trainer. `import trainer` must not import DeepSpeed or Ray."""
