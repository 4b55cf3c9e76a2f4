"""NSP Streamlit dashboard (read-only views of the MLflow store, Optuna studies and DVC metrics)."""
