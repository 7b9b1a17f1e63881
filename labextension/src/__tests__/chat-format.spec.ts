import { ServerConnection } from '@jupyterlab/services';
import { describe, expect, it } from 'vitest';

import { chipLabel, formatCost, formatPrice, modelLabel, modelTitle, usageLine } from '../chat/format';
import { channelUrl, disposeChannel, getChannel } from '../session';

describe('chat text formatting', () => {
  it('the token and cost line of a turn', () => {
    expect(usageLine({ inputTokens: 12345, outputTokens: 67, cachedTokens: 1000, cost: 0.00346,
      estimated: false, calls: 1, models: ['m1'] })).toBe('12,345 in (1,000 cached) · 67 out · $0.0035 · m1');
    expect(usageLine({ inputTokens: 1, outputTokens: 2, cachedTokens: 0, cost: 1.5,
      estimated: true, calls: 3, models: ['a', 'b'] })).toBe('1 in · 2 out · $1.50 (estimated) · a, b · 3 model calls');
  });

  it('costs and prices', () => {
    expect([formatCost(0), formatCost(0.5), formatCost(12.345), formatCost(NaN)])
      .toEqual(['$0', '$0.500', '$12.35', '$0']);
    expect([formatPrice(0), formatPrice(0.0025), formatPrice(undefined)]).toEqual(['$0', '$0.0025', '?']);
  });

  it('model picker entries show prices per 1k tokens and cooldowns', () => {
    const model = { id: 'gpt-x', provider: 'openai', context_window: 128000, capabilities: ['chat'],
      roles: ['chat'], price_per_1k: { input: 0.005, output: 0.015 },
      health: { cooldown_s: 12, last_error: 'rate_limited' } };
    expect(modelLabel(model)).toBe('gpt-x — $0.005 in / $0.015 out per 1k tokens (cooling down)');
    expect(modelTitle(model)).toContain('no tool use');
    expect(modelTitle(model)).toContain('last error: rate_limited');
  });

  it('chip labels', () => {
    expect(chipLabel({ kind: 'notebook', path: 'a/b/nb.ipynb' })).toBe('nb.ipynb');
    expect(chipLabel({ kind: 'selection', text: 'a\nb' })).toBe('Selection (2 lines)');
    expect(chipLabel({ kind: 'cell', path: 'nb.ipynb', title: 'Cell 3 of nb.ipynb' })).toBe('Cell 3 of nb.ipynb');
  });
});

describe('session channel URL', () => {
  const settings = (token: string, appendToken = true) => ServerConnection.makeSettings({
    baseUrl: 'http://host/user/x/', wsUrl: 'ws://host/user/x/', token, appendToken });

  it('is cloudide/api/ws under the ws URL, with the token only where JupyterLab appends it', () => {
    expect(channelUrl(settings(''))).toBe('ws://host/user/x/cloudide/api/ws');
    expect(channelUrl(settings('a b&c'))).toBe('ws://host/user/x/cloudide/api/ws?token=a%20b%26c');
    // same-origin pages authenticate the upgrade with the login cookie
    expect(channelUrl(settings('secret', false))).toBe('ws://host/user/x/cloudide/api/ws');
  });

  it('one channel per page', () => {
    const first = getChannel(settings(''));
    expect(getChannel()).toBe(first);
    disposeChannel();
    expect(getChannel(settings(''))).not.toBe(first);
    disposeChannel();
  });
});
