-- Run once by the postgres image on an empty data volume (docker-entrypoint-initdb.d).
-- One database per server so MLflow and Prefect migrations never interfere.
CREATE DATABASE mlflow;
CREATE DATABASE prefect;
