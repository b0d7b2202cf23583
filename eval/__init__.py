"""Metrics, baselines, forecasting and reports. Import as `from eval import metrics`, never `import eval`."""
