# Sourced on the GPU machine from the repository root: `source scripts/gpu_unpack.sh BUNDLE`.
# Unpacks what scripts/gpu_bundle.sh packed: the build into ./, the libraries into /opt/scalpel,
# Open MPI where the machine has none, the test inputs beside the repository (../shared, where
# the tests look), and sets LD_LIBRARY_PATH to them and the machine's CUDA libraries.
_b=${1:?usage: source scripts/gpu_unpack.sh BUNDLE}
_repo=$(pwd -P)
mkdir -p /opt/scalpel
# xz (scripts/gpu_bundle.sh) or gzip (older bundles); Python's tarfile where tar has no xz.
case $_b in
  *.xz) tar -C /opt/scalpel -xJf "$_b" 2>/dev/null ||
          python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$_b" /opt/scalpel ;;
  *) tar -C /opt/scalpel -xzf "$_b" ;;
esac
cp -a /opt/scalpel/repo/. "$_repo/"
# The build's compiled-in paths name /work/main and its ../shared.
if [ "$_repo" != /work/main ]; then mkdir -p /work && ln -sfn "$_repo" /work/main; fi
_sh="$(dirname "$_repo")/shared"
if [ ! -e "$_sh/models/opt-mini" ]; then
  mkdir -p "$_sh/models" "$_sh/data"
  ln -sfn "$_repo/models/opt-mini" "$_sh/models/opt-mini"
  ln -sfn "$_repo/data/corpus" "$_sh/data/corpus"
  [ -d /opt/scalpel/shared/data/wikitext2 ] && ln -sfn /opt/scalpel/shared/data/wikitext2 "$_sh/data/wikitext2"
  [ -d /opt/scalpel/shared/models/llama-mini ] && ln -sfn /opt/scalpel/shared/models/llama-mini "$_sh/models/llama-mini"
fi
_ld=/opt/scalpel/lib
if ! command -v mpirun >/dev/null 2>&1; then
  cp -an /opt/scalpel/root/. /
  ln -sfn /usr/bin/orterun /usr/bin/mpirun && ln -sfn /usr/bin/orterun /usr/bin/mpiexec
  _ld="$_ld:/opt/scalpel/mpi"
else
  echo "gpu_unpack: using this machine's MPI: $(command -v mpirun)"
fi
# CUDA libraries: the toolkit's and any pip-installed NVIDIA ones.
for _d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib $(find / -xdev \( -name 'libcublas.so.13' -o -name 'libnccl.so.2' -o -name 'libcusolver.so.12' \) -printf '%h\n' 2>/dev/null | sort -u); do
  [ -d "$_d" ] && _ld="$_ld:$_d"
done
export LD_LIBRARY_PATH="$_ld${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
unset _b _repo _ld _d _sh
