# Sourced from the repository root on the GPU box (no Node, no network): Node 20 to /tmp/kit/bin (on PATH), the slim
# production node_modules into ./node_modules, the Vulkan / GL loader .debs into /, ldconfig. Idempotent.
K="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ ! -x /tmp/kit/bin/node ]; then mkdir -p /tmp/kit/bin && xz -dc "$K/node.xz" > /tmp/kit/bin/node && chmod +x /tmp/kit/bin/node; echo "kit: node"; fi
export PATH=/tmp/kit/bin:$PATH
if [ ! -d node_modules/webgpu ]; then tar xJf "$K/modules.tar.xz"; echo "kit: node_modules"; fi
if [ ! -e /tmp/kit/debs.done ]; then for f in "$K"/debs/*.deb; do dpkg -x "$f" /; done; ldconfig; touch /tmp/kit/debs.done; echo "kit: loaders"; fi
node --version
