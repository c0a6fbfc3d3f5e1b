# phasenet on a Slurm cluster: THE one file with site settings. Edit it for your cluster.
#
# Read by `phasenet slurm ...` (which turns the first section into sbatch options) and
# sourced by every slurm/*.sbatch script at the start of a job (which runs the second
# section: modules, environment). Every setting can also be given in the environment
# (export PHASENET_ACCOUNT=...) or, for `phasenet slurm`, as an option (--account ...):
# option > environment > this file.
#
# Values below are for a typical university cluster: CPU nodes in a partition for
# builds, GPU nodes (1-4 GPUs each) in another, a project account charged per job,
# and Lmod modules. Leave a value empty to use the cluster's default.

# --- 1. Where and how long jobs run (sbatch options) -------------------------------------
: "${PHASENET_PARTITION:=}"          # CPU jobs: build shards, merge, evaluate (e.g. "cpu", "standard")
: "${PHASENET_GPU_PARTITION:=}"      # training and sweeps (e.g. "gpu"); empty: PHASENET_PARTITION
: "${PHASENET_ACCOUNT:=}"            # project/allocation to charge (e.g. "proj-phase"): sbatch -A
: "${PHASENET_QOS:=}"                # quality of service, if your site uses them (e.g. "normal")
: "${PHASENET_GPUS:=1}"              # GPUs per training job (--gpus-per-node); 0: CPU only
: "${PHASENET_GPU_TYPE:=}"           # a GPU model if the site names them (e.g. "a100"): --gpus-per-node=a100:1
: "${PHASENET_CPUS_BUILD:=4}"        # cores per build shard (phasenet build --workers)
: "${PHASENET_CPUS_TRAIN:=8}"        # cores per training job (input pipeline)
: "${PHASENET_CPUS_EVALUATE:=4}"     # cores per evaluation job
: "${PHASENET_MEM_PER_CPU:=}"        # e.g. "4G"; empty: the partition's DefMemPerCPU
: "${PHASENET_TIME_BUILD:=04:00:00}" # per shard; ~15 ms per structure per core, plus reading
: "${PHASENET_TIME_MERGE:=01:00:00}" # the merge copies compressed chunks: disk speed
: "${PHASENET_TIME_TRAIN:=24:00:00}" # per training job or sweep member
: "${PHASENET_TIME_EVALUATE:=08:00:00}"
: "${PHASENET_SIGNAL_SECONDS:=300}"  # warning signal (USR1) this long before the time limit:
                                     # the job stops phasenet, requeues itself and resumes later
: "${PHASENET_SBATCH_EXTRA:=}"       # any other sbatch options, e.g. "--constraint=a100 --mail-type=FAIL"
: "${PHASENET_LOG_DIR:=slurm-logs}"  # job logs (relative: to the directory you submit from)

# --- 2. The job's environment (runs inside each job) -------------------------------------
# Where phasenet is installed. Default: the repository's own .venv (`make venv`), found
# next to this folder; failing that, the `phasenet` of the environment you submitted from
# (sbatch passes it on; so it is with phasenet installed from a wheel, whose copy of these
# scripts lies in the package). Set PHASENET_VENV to another virtualenv, or replace the
# body of phasenet_setup with your conda/module recipe.
: "${PHASENET_VENV:=}"

phasenet_setup() {
    # Modules: uncomment and adapt (`module avail` lists them). The GPU machines need a
    # CUDA that matches your JAX/TensorFlow wheels; h5py and cctbx come from pip.
    #   module purge
    #   module load python/3.11 cuda/12.4 cudnn/9
    # Conda instead of a virtualenv:
    #   source "$HOME/miniforge3/etc/profile.d/conda.sh" && conda activate phasenet
    local venv=${PHASENET_VENV:-${PHASENET_SLURM_DIR:-.}/../.venv}
    if [ -f "$venv/bin/activate" ]; then
        # shellcheck disable=SC1091
        source "$venv/bin/activate"
    fi
    command -v phasenet >/dev/null || {
        echo "phasenet not found: set PHASENET_VENV in slurm/site.sh (tried $venv)" >&2
        return 1
    }
    # Keras on the GPU nodes: JAX (no TensorFlow there); quiet TensorFlow where it is used.
    export KERAS_BACKEND=${KERAS_BACKEND:-jax}
    export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
    # Threads: one per allocated core (numpy, XLA).
    export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
    # HDF5 file locking fails on some parallel file systems (Lustre, GPFS without flock).
    export HDF5_USE_FILE_LOCKING=${HDF5_USE_FILE_LOCKING:-FALSE}
}
