// Starts GraphiQL against authql's /graphql (same origin). Kept out of index.html so that a
// Content-Security-Policy without 'unsafe-inline' still allows it.
(function () {
  'use strict';

  var defaultQuery = [
    '# Welcome to authql.',
    '#',
    '# 1. Run Register (the play button, then Register)',
    '#    to create an account and its first session.',
    '#    Login works the same way for an existing one.',
    '# 2. Copy accessToken from the result into the',
    '#    Headers pane below, as',
    '#    {"Authorization": "Bearer <accessToken>"}',
    '# 3. Run Me.',
    '#',
    '# Access tokens are short-lived: get a new pair with',
    '#   mutation { refresh(refreshToken: "...") {',
    '#     accessToken refreshToken } }',
    '# (leave the argument out when authql keeps the',
    '# refresh token in a cookie). Headers are not saved',
    '# in this browser. The Docs pane lists everything.',
    '',
    'mutation Register {',
    '  register(input: {',
    '    email: "ada@example.com"',
    '    password: "correct horse battery staple"',
    '    username: "ada"',
    '  }) {',
    '    accessToken',
    '    refreshToken',
    '    accessTokenExpiresAt',
    '    user { id email username }',
    '    session { id expiresAt }',
    '  }',
    '}',
    '',
    'query Me {',
    '  me { id email username createdAt }',
    '  mySessions { id createdAt userAgent ipAddress current }',
    '}',
    '',
  ].join('\n');

  var fetcher = GraphiQL.createFetcher({ url: '/graphql' });

  ReactDOM.createRoot(document.getElementById('graphiql')).render(
    React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultQuery: defaultQuery,
      defaultHeaders: '',
      isHeadersEditorEnabled: true,
      shouldPersistHeaders: false,
      defaultEditorToolsVisibility: 'headers',
    }),
  );
})();
