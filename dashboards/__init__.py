"""Dashboards built from MLflow alone: learning curves, ablation tables, LR stability, masking ratios."""
