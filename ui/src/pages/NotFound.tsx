import { Page } from '../components/common';
import { t } from '../i18n';

export function NotFound({ path }: { path: string }) {
  return (
    <Page id="notfound" title={t('notfound.title')}>
      <p>{t('notfound.body', { path })}</p>
    </Page>
  );
}
