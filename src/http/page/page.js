// The livefeed page: a client of the public REST API (spec/openapi.json)
// and of the live feed websocket (spec/asyncapi.json), nothing more. The
// token lives in sessionStorage: one sign-in per tab, gone with the tab.
'use strict';

(() => {
  const FEED_LIMIT = 10;
  const LIVE_KEEP = 200;
  const SEEN_KEEP = 2000;
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 10000;
  const STORAGE_KEY = 'livefeed.session';

  const $ = (id) => document.getElementById(id);

  let session = loadSession();
  let socket = null;
  let retryTimer = null;
  let attempts = 0;
  // Why the last open socket closed, shown until one opens again: the
  // failed attempts after it only say "connection lost".
  let outage = null;
  // The newest post this tab has: the `since` of the next connection, so a
  // reconnect sends what was written meanwhile.
  let lastPostId = null;
  const seen = new Set();
  let feedOffset = 0;
  let postKey = null;
  const names = new Map();

  class ApiError extends Error {
    constructor(message, status) {
      super(message);
      this.status = status;
    }
  }

  function loadSession() {
    try {
      return JSON.parse(sessionStorage.getItem(STORAGE_KEY));
    } catch {
      return null;
    }
  }

  // A call of the spec: JSON in, JSON out; errors carry the body's message.
  async function api(method, path, body, headers = {}) {
    const init = { method, headers: { ...headers } };
    if (session) init.headers.Authorization = `Bearer ${session.token}`;
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch {
      throw new ApiError('The server cannot be reached; try again.', 0);
    }
    const text = await response.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = text;
      }
    }
    if (!response.ok) {
      let message = (data && data.message) || `HTTP ${response.status}`;
      const retry = response.headers.get('Retry-After');
      if (retry) message += ` (retry in ${retry} s)`;
      if (response.status === 401 && session) {
        signOut('Your session has expired: log in again.');
      }
      throw new ApiError(message, response.status);
    }
    return data;
  }

  function notify(message) {
    const notice = $('notice');
    notice.textContent = message;
    notice.hidden = !message;
  }

  // A failure becomes the page's alert; a 401 has signed out and said so.
  function report(error) {
    if (error.status !== 401) notify(error.message);
  }

  // Runs `action`, reporting its failure.
  async function guarded(action) {
    try {
      notify('');
      await action();
    } catch (error) {
      report(error);
    }
  }

  // A random UUID, also where crypto.randomUUID is missing (plain http on a
  // host other than localhost is not a secure context).
  function uuid() {
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  // ---------------------------------------------------------------- session

  async function logIn(id, password) {
    const { token } = await api('POST', '/login', { id, password });
    session = { id, token, name: '' };
    try {
      const user = await api('GET', `/user/get/${encodeURIComponent(id)}`);
      session.name = `${user.first_name} ${user.second_name}`;
    } catch {
      // The name is decoration: the session works without it.
    }
    sessionStorage.setItem(STORAGE_KEY, JSON.stringify(session));
    await enter();
  }

  async function enter() {
    $('signed-out').hidden = true;
    $('signed-in').hidden = false;
    $('whoami').hidden = false;
    $('me-name').textContent = session.name || 'user';
    $('me-id').textContent = session.id;
    $('post-text').focus();
    await loadFeed(0).catch(report);
    connect();
  }

  function signOut(message) {
    session = null;
    sessionStorage.removeItem(STORAGE_KEY);
    clearTimeout(retryTimer);
    if (socket) {
      const open = socket;
      socket = null;
      open.close(1000, 'signed out');
    }
    lastPostId = null;
    seen.clear();
    attempts = 0;
    outage = null;
    $('live-list').replaceChildren();
    $('feed-list').replaceChildren();
    $('search-results').replaceChildren();
    $('signed-in').hidden = true;
    $('whoami').hidden = true;
    $('signed-out').hidden = false;
    setConnection('signed-out', 'not connected');
    notify(message || '');
    $('login-id').focus();
  }

  // -------------------------------------------------------------- live feed

  function setConnection(state, text) {
    $('conn').dataset.state = state;
    $('conn-text').textContent = text;
  }

  function connect() {
    clearTimeout(retryTimer);
    if (!session) return;
    const url = new URL('/post/feed/posted', window.location.href);
    url.protocol = window.location.protocol === 'https:' ? 'wss:' : 'ws:';
    // Browsers cannot set headers on a websocket: the spec's token goes in
    // the query, as the server accepts.
    url.searchParams.set('token', session.token);
    if (lastPostId) url.searchParams.set('since', lastPostId);
    setConnection('connecting', attempts ? `reconnecting (attempt ${attempts + 1})…` : 'connecting…');
    const ws = new WebSocket(url);
    socket = ws;
    let opened = false;
    ws.onopen = () => {
      if (ws !== socket) return;
      opened = true;
      attempts = 0;
      outage = null;
      setConnection('live', lastPostId ? 'live (resumed after the last post)' : 'live');
    };
    ws.onmessage = (event) => {
      if (ws === socket) receive(event.data);
    };
    ws.onclose = (event) => {
      if (ws !== socket) return;
      socket = null;
      retry(event, opened);
    };
  }

  // Exponential backoff with jitter, so instances that restart are not hit
  // by every client at the same instant.
  function retry(event, opened) {
    if (!session) return;
    const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** attempts);
    const delay = Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
    attempts += 1;
    const why = event.code === 1006 ? 'connection lost' : `closed ${event.code}${event.reason ? `: ${event.reason}` : ''}`;
    if (opened || !outage) outage = why;
    setConnection('reconnecting', `${outage}; reconnecting in ${(delay / 1000).toFixed(1)} s`);
    retryTimer = setTimeout(connect, delay);
    // A handshake refused at once may be a dead token (the browser does not
    // say why): a REST call tells, and signs out on 401.
    if (!opened && attempts >= 2) {
      api('GET', '/post/feed?offset=0&limit=1').catch(() => {});
    }
  }

  function remember(postId) {
    seen.add(postId);
    if (seen.size > SEEN_KEEP) seen.delete(seen.values().next().value);
  }

  function receive(data) {
    let post;
    try {
      post = JSON.parse(data);
    } catch {
      return;
    }
    if (!post || typeof post.postId !== 'string') return;
    lastPostId = post.postId;
    // A catch-up may send again a post that committed in the same instant
    // as `since`.
    if (seen.has(post.postId)) return;
    remember(post.postId);
    const item = renderPost(post.postId, post.author_user_id, post.postText);
    item.dataset.receivedAt = String(Date.now());
    const list = $('live-list');
    list.prepend(item);
    while (list.children.length > LIVE_KEEP) list.lastElementChild.remove();
  }

  // ------------------------------------------------------------ posts, feed

  function renderPost(id, author, text) {
    const item = document.createElement('li');
    item.dataset.postId = id;
    const byline = document.createElement('p');
    byline.className = 'author';
    byline.textContent = author;
    nameInto(byline, author);
    const body = document.createElement('p');
    body.className = 'text';
    body.textContent = text;
    item.append(byline, body);
    return item;
  }

  // Shows the author's name once /user/get answers (cached per page).
  function nameInto(element, author) {
    if (typeof author !== 'string') return;
    if (!names.has(author)) {
      names.set(
        author,
        api('GET', `/user/get/${encodeURIComponent(author)}`)
          .then((user) => `${user.first_name} ${user.second_name}`)
          .catch(() => null),
      );
    }
    names.get(author).then((name) => {
      if (name) element.textContent = name;
    });
  }

  async function loadFeed(offset) {
    const posts = await api('GET', `/post/feed?offset=${offset}&limit=${FEED_LIMIT}`);
    feedOffset = offset;
    const list = $('feed-list');
    list.replaceChildren(...posts.map((post) => renderPost(post.id, post.author_user_id, post.text)));
    if (offset === 0 && posts.length && !lastPostId) {
      // Posts written after the newest one shown come over the socket.
      lastPostId = posts[0].id;
      posts.forEach((post) => remember(post.id));
    }
    $('feed-page').textContent = posts.length
      ? `Posts ${offset + 1}–${offset + posts.length}`
      : offset ? 'No older posts' : 'No posts yet';
    $('feed-newer').disabled = offset === 0;
    $('feed-older').disabled = posts.length < FEED_LIMIT;
  }

  async function createPost() {
    const text = $('post-text').value;
    // One key per text: a retry after a lost answer cannot post twice.
    postKey = postKey || uuid();
    const id = await api('POST', '/post/create', { text }, { 'Idempotency-Key': postKey });
    postKey = null;
    $('post-text').value = '';
    $('post-status').textContent = `Posted (${id}).`;
  }

  // ----------------------------------------------------------------- people

  async function search() {
    const query = new URLSearchParams({
      first_name: $('search-first').value.trim(),
      last_name: $('search-last').value.trim(),
    });
    const users = await api('GET', `/user/search?${query}`);
    $('search-status').textContent = `${users.length} found${users.length === 100 ? ' (the first 100)' : ''}.`;
    $('search-results').replaceChildren(...users.map(personItem));
  }

  function personItem(user) {
    const item = document.createElement('li');
    item.dataset.userId = user.id;
    const name = document.createElement('span');
    name.className = 'name';
    name.textContent = `${user.first_name} ${user.second_name}`;
    const city = document.createElement('span');
    city.className = 'city';
    city.textContent = user.city;
    item.append(name, ' ', city);
    if (user.id === session.id) {
      item.append(' (you)');
      return item;
    }
    const state = document.createElement('span');
    state.className = 'follow-state';
    state.setAttribute('role', 'status');
    const id = encodeURIComponent(user.id);
    const button = (label, path, following) => {
      const b = document.createElement('button');
      b.type = 'button';
      b.className = label.toLowerCase();
      b.textContent = label;
      b.setAttribute('aria-label', `${label} ${name.textContent}`);
      b.addEventListener('click', () =>
        guarded(async () => {
          await api('PUT', path);
          state.textContent = following ? 'following' : 'not following';
          item.dataset.following = String(following);
        }),
      );
      return b;
    };
    item.append(
      ' ',
      button('Follow', `/friend/set/${id}`, true),
      ' ',
      button('Unfollow', `/friend/delete/${id}`, false),
      ' ',
      state,
    );
    return item;
  }

  // ------------------------------------------------------------------ wiring

  function onSubmit(id, action) {
    $(id).addEventListener('submit', (event) => {
      event.preventDefault();
      const submit = event.target.querySelector('button[type=submit]');
      submit.disabled = true;
      guarded(action).finally(() => {
        submit.disabled = false;
      });
    });
  }

  onSubmit('login-form', () => logIn($('login-id').value.trim(), $('login-password').value));
  onSubmit('register-form', async () => {
    const password = $('reg-password').value;
    const { user_id: id } = await api('POST', '/user/register', {
      first_name: $('reg-first').value.trim(),
      second_name: $('reg-second').value.trim(),
      birthdate: $('reg-birthdate').value,
      biography: $('reg-biography').value,
      city: $('reg-city').value.trim(),
      password,
    });
    await logIn(id, password);
  });
  onSubmit('post-form', createPost);
  onSubmit('search-form', search);
  $('post-text').addEventListener('input', () => {
    postKey = null;
  });
  $('sign-out').addEventListener('click', () => signOut());
  $('feed-newer').addEventListener('click', () => guarded(() => loadFeed(Math.max(0, feedOffset - FEED_LIMIT))));
  $('feed-older').addEventListener('click', () => guarded(() => loadFeed(feedOffset + FEED_LIMIT)));
  $('feed-refresh').addEventListener('click', () => guarded(() => loadFeed(0)));
  // Back online: no reason to wait out the backoff.
  window.addEventListener('online', () => {
    if (session && !socket) connect();
  });

  if (session) enter();
})();
