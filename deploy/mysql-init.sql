-- The replication user cdc-enricher connects as (docker-compose.yml mounts this file).
CREATE USER IF NOT EXISTS 'cdc'@'%' IDENTIFIED BY 'cdc-secret';
GRANT REPLICATION SLAVE, REPLICATION CLIENT, SELECT ON *.* TO 'cdc'@'%';
-- The source role's checkpoint (docker compose --profile scale-out): a table it creates here.
CREATE DATABASE IF NOT EXISTS cdc_state;
GRANT CREATE, INSERT, UPDATE, SELECT ON cdc_state.* TO 'cdc'@'%';
CREATE DATABASE IF NOT EXISTS shop;
CREATE TABLE IF NOT EXISTS shop.support (id INT PRIMARY KEY AUTO_INCREMENT, customer VARCHAR(50),
  message TEXT, created_at DATETIME(6) DEFAULT CURRENT_TIMESTAMP(6),
  sentiment VARCHAR(20), sentiment_confidence DOUBLE);
CREATE TABLE IF NOT EXISTS shop.orders (id INT PRIMARY KEY, customer VARCHAR(50), total DECIMAL(10,2),
  items INT DEFAULT 1, status ENUM('new','paid','shipped'));
CREATE TABLE IF NOT EXISTS shop.articles (id INT PRIMARY KEY AUTO_INCREMENT, title VARCHAR(200), body TEXT);
CREATE TABLE IF NOT EXISTS shop.products (id INT PRIMARY KEY, name VARCHAR(100), features TEXT, description TEXT);
-- The write-back account (least privilege): the output columns, the progress and dead-letter tables.
CREATE USER IF NOT EXISTS 'cdc_writer'@'%' IDENTIFIED BY 'writer-secret';
GRANT SELECT, UPDATE ON shop.support TO 'cdc_writer'@'%';
GRANT SELECT, UPDATE ON shop.products TO 'cdc_writer'@'%';
GRANT SELECT, INSERT, UPDATE, CREATE ON shop.cdc_enricher_writeback TO 'cdc_writer'@'%';
GRANT SELECT, INSERT, UPDATE, CREATE ON shop.cdc_enricher_dead_letters TO 'cdc_writer'@'%';
