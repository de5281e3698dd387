// A Prometheus panel query, as Grafana's Prometheus data source stores it; the
// dashboard schema leaves targets untyped, so the check types them here.
import type { DataSourceRef } from '@grafana/schema';

export interface PromTarget {
  refId: string;
  datasource?: DataSourceRef;
  expr: string;
  legendFormat?: string;
  instant?: boolean;
  range?: boolean;
  format?: 'time_series' | 'table' | 'heatmap';
  interval?: string;
  editorMode?: 'code' | 'builder';
  hide?: boolean;
}
