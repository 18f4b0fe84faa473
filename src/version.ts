/** The one version of dejavu-ts, written into every artifact (toolVersion); a test checks it equals package.json's. */
export const VERSION = '0.1.0';
