-- Run once by the postgres image on an empty data volume (docker-entrypoint-initdb.d).
-- One database per server so MLflow, MLflow's users and Prefect migrations never interfere.
CREATE DATABASE mlflow;
CREATE DATABASE mlflow_auth;
CREATE DATABASE prefect;
