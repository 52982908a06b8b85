# Airflow image of this Astro project (`astro dev start` / `astro deploy` build it).
# The Astro Runtime base image's ONBUILD steps copy the project to /usr/local/airflow and install
# packages.txt (apt) and requirements.txt (pip). Pick the Runtime whose Airflow matches
# requirements.txt (3.3.2): `docker run --rm <image> airflow version`.
FROM astrocrpublic.azurecr.io/runtime:3.3-2

# The step package itself, so the DAG imports `edgetpu_retrain` (runners, drops) from site-packages
# and the local runner finds the `edgetpu-retrain` CLI. Its pinned dependencies came from
# requirements.txt above. With the docker/kubernetes runners the heavy steps run in the trainer
# image instead (docker/Dockerfile.trainer); the Airflow image then only runs the DAG and the sensor.
RUN pip install --no-cache-dir --no-deps /usr/local/airflow

# Runner defaults for this image; override per deployment (Astro environment variables or .env).
# EDGETPU_DATA_ROOT must be the same path on the Docker host, in this image and in the step
# containers (mount it at that path, e.g. with a docker-compose.override.yml for `astro dev`).
ENV EDGETPU_RUNNER=docker \
    EDGETPU_DATA_ROOT=/data/edgetpu
