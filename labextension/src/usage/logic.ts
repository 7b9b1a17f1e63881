/**
 * The pure part of the usage views, in one import: formats and budget (`format.ts`),
 * buckets, stacking, scales and chart layout (`series.ts`).
 */

export * from './format';
export * from './series';
