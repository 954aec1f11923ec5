# Source on the GPU machine (device tool): install the carried wheels once into /tmp/site and point
# Python at them, the source tree and the carried model folder. See ../shared/OFFLINE.md §6-7.
if [ ! -f /tmp/site/.done ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && touch /tmp/site/.done || return 1
fi
export PYTHONPATH="$PWD/src:/tmp/site:$PWD/.models:/tmp/models${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled TQDM_DISABLE=1 PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
