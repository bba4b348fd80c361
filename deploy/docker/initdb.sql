-- Run once by the postgres container on an empty volume: the databases beside Dagster's.
CREATE DATABASE optuna OWNER quantgod;
CREATE DATABASE mlflow OWNER quantgod;
