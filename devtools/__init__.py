"""Demo and test tooling, not product code: the offline mirror (a generated corpus served on loopback)
and throwaway workspaces with their own Airflow and MLflow. Nothing under tasks/ or dags/ imports it."""
