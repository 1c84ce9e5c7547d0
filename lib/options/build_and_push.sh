# shellcheck shell=bash
# Summary: build_and_push.sh's options, declared once (lib/options.sh reads, checks and lists them).

opt --project type=project env=PROJECT meta=ID help='Google Cloud project (default: gcloud config)'
opt --location type=region env=LOCATION meta=REGION help='Artifact Registry region, e.g. us-east4 (default us-east4)'
opt --repo type=repo env=REPO_NAME meta=NAME help='Artifact Registry repository (default gpu-transformers)'
opt --image-name type=image-name env=IMAGE_NAME meta=NAME old=--image help='image name (default gpu_transformers)'
opt --tag type=tag env=TAG meta=TAG help='the release tag (default: the VERSION file)'
opt --base-image type=image-ref env=BASE_IMAGE meta=IMAGE \
  help="the image's base, build argument BASE_IMAGE (default: the Dockerfile's CUDA 12 base)"
opt --ca-bundle type=buildkit-pem-file env=CA_BUNDLE meta=FILE old=--ca-cert \
  help='extra CA bundle (PEM) for a build behind a TLS-intercepting proxy, given to BuildKit|as the secret ca_bundle: it is never stored in a layer'
opt --registry-host type=registry-host env=REGISTRY_HOST meta=HOST help='registry host (default LOCATION-docker.pkg.dev)'
opt --compression type=enum:gzip,zstd var=COMPRESSION meta=gzip\|zstd conflicts=--no-push \
  conflicts-why='--compression sets how the pushed layers are compressed, and --no-push pushes none (a local image is stored uncompressed); drop --compression, or drop --no-push to push' \
  help='how the pushed layers are compressed (default gzip). zstd inflates about 2.5x|faster on the VM but needs Docker >= 23.0 there, and a client with the buildx|plugin here; without one the script stops before it creates anything (docs/cold-start.md)'
opt --keep type=int:0:10000 var=KEEP meta=N \
  help='the cleanup policy keeps the newest N sha-* versions of each image (default 20;|0: no policy); latest and other tags are never deleted; a repository with cleanup|policies of its own is left alone (said in one line)'
opt --no-push type=switch var=NO_PUSH \
  help='build and tag locally only (IMAGE:TAG, IMAGE:sha-..., IMAGE:latest); the last|line on stdout is the local reference IMAGE:TAG'
opt --dry-run type=switch var=DRY_RUN help='print every command, quoted, and change nothing'
