-- Per consumer, the last stream version applied: replays and refilled logs skip what is done.
CREATE TABLE consumer_stream_versions (
    consumer   text NOT NULL,
    stream_id  text NOT NULL,
    version    integer NOT NULL,
    PRIMARY KEY (consumer, stream_id)
);
