//! One input record, as the stages need it: read from an input topic, or
//! forwarded and read back from the repartition topic, where it stands for
//! the record it was forwarded from (that record's topic, partition, offset
//! and key).

#[derive(Debug, Clone, Copy)]
pub struct InputRecord<'a> {
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub timestamp_ms: Option<i64>,
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}
