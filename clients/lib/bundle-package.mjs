// The package test page's bundle and page (see bundle.mjs).
export { bundlePackageApp, PACKAGE_PAGE } from './bundle.mjs';
