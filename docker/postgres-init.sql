-- The compose's Postgres holds Airflow's metadata (POSTGRES_DB), MLflow's runs and registry, and the AudioSet
-- download state with its request budget (AUDIOSET_STATE_DB).
CREATE DATABASE mlflow;
CREATE DATABASE mood_state;
