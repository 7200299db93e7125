//! A database per test, created on a test server and dropped afterwards; shared by the
//! end-to-end and dashboard tests. Roles are cluster-wide: those named after the database
//! (as `vigil admin team grafana-role` names a team's role by default) go with it.

use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

/// URL of a PostgreSQL server on which tests may create databases.
pub fn server_url() -> String {
    std::env::var("VIGIL_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub struct TestDb {
    pub url: String,
    server: String,
    name: String,
}

impl TestDb {
    pub async fn create() -> Self {
        Self::create_on(&server_url()).await
    }

    pub async fn create_on(server: &str) -> Self {
        let name = format!("vigil_test_{}", Uuid::new_v4().simple());
        connect(server)
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        Self {
            url: with_database(server, &name),
            server: server.to_string(),
            name,
        }
    }

    pub async fn client(&self) -> Client {
        connect(&self.url).await
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A connection to this database logged in as `role` with `password`.
    pub async fn login(&self, role: &str, password: &str) -> Result<Client, tokio_postgres::Error> {
        let mut config: tokio_postgres::Config = self.url.parse()?;
        config.user(role).password(password);
        let (client, conn) = config.connect(NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    }
}

/// The server URL with its database replaced, credentials and options kept.
fn with_database(server: &str, name: &str) -> String {
    let (base, query) = match server.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (server, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut url = format!("{}/{}", &base[..host_end], name);
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let server = self.server.clone();
        let name = self.name.clone();
        // Drop runs outside async context; a short-lived runtime on its own thread does it.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok((client, conn)) = tokio_postgres::connect(&server, NoTls).await {
                    tokio::spawn(conn);
                    let for_each_role = |statement: &str| {
                        format!(
                            "DO $$ DECLARE r text; BEGIN
                                 FOR r IN SELECT rolname FROM pg_roles
                                          WHERE starts_with(rolname, '{name}_') LOOP
                                     EXECUTE format('{statement}', r);
                                 END LOOP;
                             END $$"
                        )
                    };
                    // Sessions still logged in as those roles end with the database, which a
                    // role that is not a superuser may force only as a member of theirs.
                    let _ = client
                        .batch_execute(&for_each_role("GRANT %I TO CURRENT_USER"))
                        .await;
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                    // With the database gone the roles own nothing and hold no grants.
                    let _ = client.batch_execute(&for_each_role("DROP ROLE %I")).await;
                }
            });
        })
        .join();
    }
}

pub async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    tokio::spawn(conn);
    client
}
