# The qgjob services: docker build -t qgjob . ; every service is `qgjob <command>`.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY qgjob qgjob
COPY eventstore eventstore
COPY projections projections
COPY scheduler scheduler
COPY agents agents
RUN pip install '.[server]' && useradd --create-home --uid 10001 qgjob
USER qgjob
WORKDIR /home/qgjob
EXPOSE 8765
ENTRYPOINT ["qgjob"]
CMD ["--help"]
